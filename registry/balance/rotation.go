package balance

import "sync/atomic"

// Rotation is a position in a round-robin order, shared by the requests
// that balance over the same hosts; a registry Service carries one with
// the weighted order of its endpoints. The zero value is a plain rotation
// over however many hosts a pool has. A Rotation must not be copied once
// in use.
type Rotation struct {
	schedule []int32 // weighted order of host indexes; nil when weights are equal
	next     atomic.Uint64
}

// NewRotation returns a rotation over hosts of the given weights (host i
// has weights[i]): a smooth weighted round-robin order, as nginx makes
// it, in which a host of weight 3 comes three times as often as one of
// weight 1, spread out rather than in a row. With equal weights it is the
// zero Rotation.
func NewRotation(weights []int) Rotation {
	return Rotation{schedule: weightedSchedule(weights)}
}

// weightedSchedule returns the smooth weighted round-robin order of
// indexes into weights, or nil when all weights are equal.
func weightedSchedule(weights []int) []int32 {
	equal, total := true, 0
	for _, w := range weights {
		total += w
		if w != weights[0] {
			equal = false
		}
	}
	if equal {
		return nil
	}
	sched := make([]int32, 0, total)
	current := make([]int, len(weights))
	for range total {
		best := 0
		for i, w := range weights {
			current[i] += w
			if current[i] > current[best] {
				best = i
			}
		}
		current[best] -= total
		sched = append(sched, int32(best))
	}
	return sched
}
