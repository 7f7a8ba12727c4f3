// Package input holds what the registry and its traffic policies both
// check input with: what a service or version name is, and the error of
// bad input. The registry and registry/traffic export it as their own
// (registry.ErrInvalid, registry.ValidName, traffic.ErrInvalid), so that
// an error about bad input matches the same ErrInvalid whichever of them
// found it.
package input

import (
	"errors"
	"fmt"
)

// ErrInvalid is matched by every error about bad input.
var ErrInvalid = errors.New("invalid input")

// inputError is an error about bad input; it matches ErrInvalid.
type inputError struct{ msg string }

func (e inputError) Error() string        { return e.msg }
func (e inputError) Is(target error) bool { return target == ErrInvalid }

// Errorf returns an error about bad input, formatted as fmt.Sprintf
// does, that matches ErrInvalid.
func Errorf(format string, args ...any) error {
	return inputError{msg: fmt.Sprintf(format, args...)}
}

// MaxNameLen is the longest service or version name.
const MaxNameLen = 64

// ValidName reports whether s is a service or version name: 1 to 64
// characters of A-Z a-z 0-9 . _ -, and not only dots. The request path
// checks names with it through registry.ValidName: keep it small enough
// (go build -gcflags=-m ./registry) that the compiler inlines that.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLen {
		return false
	}
	onlyDots := true
	for i := range len(s) {
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
	return Errorf("invalid %s name %q: want 1 to %d characters of A-Z a-z 0-9 . _ - (not only dots)", kind, s, MaxNameLen)
}
