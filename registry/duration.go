package registry

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration that reads from JSON either as a number of
// nanoseconds or as a string such as "1.5s", "10m" or "1d" (a day is
// 24h), the way Caddy's own durations do. It writes as nanoseconds.
type Duration time.Duration

// UnmarshalJSON reads a number of nanoseconds or a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) >= 2 && b[0] == '"' && b[len(b)-1] == '"' {
		dur, err := ParseDuration(string(b[1 : len(b)-1]))
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

// ParseDuration parses a duration as time.ParseDuration does, with the
// unit d for days of 24h: "1d12h" is 36 hours.
func ParseDuration(s string) (time.Duration, error) {
	if len(s) > 1024 {
		return 0, errors.New("parsing duration: input string too long")
	}
	if !strings.Contains(s, "d") {
		return time.ParseDuration(s)
	}
	// Rewrite every <number>d as its hours.
	var out strings.Builder
	start := 0 // where the current number begins
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9' || c == '.' || c == '-' || c == '+':
			continue
		case c == 'd':
			days, err := strconv.ParseFloat(s[start:i], 64)
			if err != nil {
				return 0, errors.New("parsing duration " + strconv.Quote(s) + ": bad number of days")
			}
			out.WriteString(strconv.FormatFloat(days*24, 'f', -1, 64))
			out.WriteByte('h')
			start = i + 1
		default:
			// a unit: copy the number and the unit's letters
			j := i
			for j < len(s) && !(s[j] >= '0' && s[j] <= '9' || s[j] == '.') {
				j++
			}
			out.WriteString(s[start:j])
			start, i = j, j-1
		}
	}
	out.WriteString(s[start:])
	return time.ParseDuration(out.String())
}
