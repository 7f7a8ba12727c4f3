package registry

import (
	"errors"

	"github.com/svcreg/caddy-svcreg/registry/internal/input"
)

// Errors that callers tell apart with errors.Is.
var (
	// ErrInvalid is wrapped by every error about bad input: a bad service
	// or version name, a bad address, a bad weight, a bad traffic policy
	// (traffic.ErrInvalid is the same error).
	ErrInvalid = input.ErrInvalid
	// ErrUnknownService means no version of the service is registered.
	ErrUnknownService = errors.New("unknown service")
	// ErrUnknownVersion means the service is registered, but not this version.
	ErrUnknownVersion = errors.New("unknown version")
	// ErrUnknownEndpoint means the service version has no such endpoint.
	ErrUnknownEndpoint = errors.New("unknown endpoint")
	// ErrNotSynced means the backend has not loaded its endpoints yet.
	ErrNotSynced = errors.New("registry not synced with its backend yet")
	// ErrBackendUnavailable means the backend's store could not be reached
	// to make a change; nothing was changed.
	ErrBackendUnavailable = errors.New("registry backend unavailable")
	// ErrOutcomeUnknown means a change reached, or may have reached, the
	// backend's store, but whether it was applied is not known: it may
	// still apply. Adding and deleting are idempotent, so the change can
	// be sent again safely.
	ErrOutcomeUnknown = errors.New("the change may or may not have been applied; it may still apply, and sending it again is safe")
	// ErrSeeded means an endpoint comes from the config's seeds, which the
	// backend does not store: remove it from the config instead.
	ErrSeeded = errors.New("endpoint is seeded by the config, not stored in the backend")
	// ErrNoTrafficPolicy means the backend stores no traffic policy for
	// the service.
	ErrNoTrafficPolicy = errors.New("no traffic policy stored for the service")
	// ErrNoAvailableHost means a known service version has no endpoint
	// that takes requests.
	ErrNoAvailableHost = errors.New("no available host")
)

// Invalidf returns an error about bad input, formatted as fmt.Sprintf
// does, that matches ErrInvalid.
func Invalidf(format string, args ...any) error {
	return input.Errorf(format, args...)
}

// errStopped says a stopped registry was started again.
var errStopped = errors.New("the registry was stopped")
