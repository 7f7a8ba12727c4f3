package registry

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
const MaxNameLen = 64

// ValidName reports whether s is a service or version name: 1 to 64
// characters of A-Z a-z 0-9 . _ -, and not only dots.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLen {
		return false
	}
	onlyDots := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
			onlyDots = false
		default:
			return false
		}
	}
	return !onlyDots
}

// CheckName returns an error matching ErrInvalid, naming kind (such as
// "service" or "version"), if s is not a valid name.
func CheckName(kind, s string) error {
	if ValidName(s) {
		return nil
	}
	return Invalidf("invalid %s name %q: want 1 to %d characters of A-Z a-z 0-9 . _ - (not only dots)", kind, s, MaxNameLen)
}
