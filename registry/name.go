package registry

import "github.com/svcreg/caddy-svcreg/registry/internal/input"

// ServiceKey names one version of a service.
type ServiceKey struct {
	Service string
	Version string
}

// String returns "<service> <version>".
func (k ServiceKey) String() string { return k.Service + " " + k.Version }

// Validate checks both names.
func (k ServiceKey) Validate() error {
	if err := CheckName("service", k.Service); err != nil {
		return err
	}
	return CheckName("version", k.Version)
}

// ValidateFilter checks a key that selects service versions, as a
// matcher or a per-service setting does: an empty Service selects every
// service and an empty Version every version, but a Version needs a
// Service. The names it has must be valid.
func (k ServiceKey) ValidateFilter() error {
	if k.Version != "" && k.Service == "" {
		return Invalidf("a version needs a service")
	}
	if k.Service != "" {
		if err := CheckName("service", k.Service); err != nil {
			return err
		}
	}
	if k.Version != "" {
		return CheckName("version", k.Version)
	}
	return nil
}

// MaxNameLen is the longest service or version name.
const MaxNameLen = 64 // TestMaxNameLen: input.MaxNameLen, which checks names

// ValidName reports whether s is a service or version name: 1 to 64
// characters of A-Z a-z 0-9 . _ -, and not only dots.
func ValidName(s string) bool { return input.ValidName(s) }

// CheckName returns an error matching ErrInvalid, naming kind (such as
// "service" or "version"), if s is not a valid name.
func CheckName(kind, s string) error { return input.CheckName(kind, s) }
