package registry

import (
	"encoding/json"
	"errors"
	"strconv"
	"time"
)

// Duration is a time.Duration that reads from JSON either as a number of
// nanoseconds or as a string such as "1.5s", "10m" or "1d" (a day is
// 24h), the way Caddy's own durations do. It writes as nanoseconds.
type Duration time.Duration

// UnmarshalJSON reads a number of nanoseconds or a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) >= 2 && b[0] == '"' && b[len(b)-1] == '"' {
		dur, err := parseDuration(string(b[1 : len(b)-1]))
		if err != nil {
			return err
		}
		*d = Duration(dur)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return err
	}
	*d = Duration(n)
	return nil
}

// parseDuration parses a duration as time.ParseDuration does, with the
// unit d for days of 24h ("1d12h" is 36 hours), exactly as Caddy's
// caddy.ParseDuration does.
func parseDuration(s string) (time.Duration, error) {
	if len(s) > 1024 {
		return 0, errors.New("parsing duration: input string too long")
	}
	// Rewrite each <number>d as <number*24>h, where the number is the run
	// of digits, dots and signs before the d.
	numStart, inNumber := 0, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == 'd' {
			days, err := strconv.ParseFloat(s[numStart:i], 64)
			if err != nil {
				return 0, err
			}
			hours := strconv.FormatFloat(days*24, 'f', -1, 64)
			s = s[:numStart] + hours + "h" + s[i+1:]
			i-- // go on from where the d was, as Caddy does
			continue
		}
		if !inNumber {
			numStart = i
		}
		inNumber = c >= '0' && c <= '9' || c == '.' || c == '-' || c == '+'
	}
	return time.ParseDuration(s)
}
