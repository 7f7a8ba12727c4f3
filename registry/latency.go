package registry

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// ewmaDecay is the time constant of an endpoint's peak-EWMA latency: a
// sample counts half after about 7 s; an endpoint that gets no requests
// (it lost every pick) looks faster and faster until it gets one again.
const ewmaDecay = 10 * time.Second

// peakEWMA is an endpoint's latency estimate, as Finagle and Linkerd keep
// it: a slower sample replaces the estimate at once (the peak), a faster
// one pulls it down with a weight that grows with the time since the
// last sample. It is lock-free; two samples at the same instant may lose
// one, which an estimate can afford.
type peakEWMA struct {
	ns    atomic.Uint64 // float64 bits: the estimate in nanoseconds at stamp
	stamp atomic.Int64  // unix nanoseconds of the last sample
}

// observe adds a sample taken at now.
func (e *peakEWMA) observe(sample time.Duration, now int64) {
	rtt := float64(sample)
	old := math.Float64frombits(e.ns.Load())
	if rtt < old {
		w := math.Exp(-float64(now-e.stamp.Load()) / float64(ewmaDecay))
		rtt = old*w + rtt*(1-w)
	}
	e.ns.Store(math.Float64bits(rtt))
	e.stamp.Store(now)
}

// at returns the estimate at now, decayed since the last sample.
func (e *peakEWMA) at(now int64) float64 {
	v := math.Float64frombits(e.ns.Load())
	if v == 0 {
		return 0
	}
	if td := now - e.stamp.Load(); td > int64(ewmaDecay/1000) {
		v *= math.Exp(-float64(td) / float64(ewmaDecay))
	}
	return v
}

// Latency histograms: four buckets per power of two of nanoseconds, from
// 1µs to about 275 s, counted in two windows of histWindow each (the
// current one and the one before), so that a quantile reflects the last
// 10 to 20 s.
const (
	histSub     = 4
	histMinBits = 10 // 2^10 ns = 1µs: faster samples count as 1µs
	histBuckets = (38 - histMinBits) * histSub
	histWindow  = 10 * time.Second
	histRefresh = 100 * time.Millisecond // how often a quantile is recomputed
	histMinimum = 20                     // samples needed for a quantile
)

// latencyHist is a service version's recent response times.
type latencyHist struct {
	windows   [2]histWindowCounts
	current   atomic.Int32 // the window samples go to
	rotatedAt atomic.Int64 // unix nanoseconds the current window began
	p99       atomic.Int64 // cached quantile, ns; 0 = not enough samples
	p99At     atomic.Int64 // unix nanoseconds it was computed
}

// histWindowCounts are the samples of one window.
type histWindowCounts struct {
	counts [histBuckets]atomic.Uint32
	total  atomic.Uint32
}

// bucket returns the histogram bucket of a duration.
func bucket(d time.Duration) int {
	ns := uint64(max(d, 1<<histMinBits))
	top := bits.Len64(ns) - 1                                // 2^top <= ns
	sub := int(ns>>(uint(top)-2)) & (histSub - 1)            // the next two bits
	return min((top-histMinBits)*histSub+sub, histBuckets-1) // clamp the slowest
}

// bucketTop returns the upper bound of a bucket.
func bucketTop(b int) time.Duration {
	top, sub := b/histSub+histMinBits, b%histSub
	return time.Duration(uint64(histSub+sub+1) << uint(top-2))
}

// observe counts a sample taken at now.
func (h *latencyHist) observe(d time.Duration, now int64) {
	if now-h.rotatedAt.Load() >= int64(histWindow) {
		h.rotate(now)
	}
	w := &h.windows[h.current.Load()]
	w.counts[bucket(d)].Add(1)
	w.total.Add(1)
}

// rotate starts a new window, forgetting the oldest, or both when the
// newer one is over a window old too.
func (h *latencyHist) rotate(now int64) {
	at := h.rotatedAt.Load()
	if now-at < int64(histWindow) || !h.rotatedAt.CompareAndSwap(at, now) {
		return // another caller rotated
	}
	next := 1 - h.current.Load()
	h.windows[next].clear()
	if now-at >= 2*int64(histWindow) {
		h.windows[1-next].clear()
	}
	h.current.Store(next)
}

// clear forgets a window's samples.
func (w *histWindowCounts) clear() {
	for i := range w.counts {
		w.counts[i].Store(0)
	}
	w.total.Store(0)
}

// learning reports whether the histogram has too few samples for a
// quantile.
func (h *latencyHist) learning(now int64) bool { return h.quantile99(now) == 0 }

// quantile99 returns the 99th percentile of the recent samples, or 0 with
// fewer than histMinimum of them. It is recomputed at most every
// histRefresh, and at every call while it is 0: a version learns its
// latency with its 20th answer, not up to histRefresh later.
func (h *latencyHist) quantile99(now int64) time.Duration {
	if p := h.p99.Load(); p != 0 && now-h.p99At.Load() < int64(histRefresh) {
		return time.Duration(p)
	}
	h.p99At.Store(now)
	if now-h.rotatedAt.Load() >= int64(histWindow) {
		h.rotate(now) // no sample for a while: the oldest say little
	}
	var total uint64
	for i := range h.windows {
		total += uint64(h.windows[i].total.Load())
	}
	p := time.Duration(0)
	if total >= histMinimum {
		rank := total - total/100 // samples at or below the 99th percentile
		var seen uint64
		for b := range histBuckets {
			seen += uint64(h.windows[0].counts[b].Load()) + uint64(h.windows[1].counts[b].Load())
			if seen >= rank {
				p = bucketTop(b)
				break
			}
		}
	}
	h.p99.Store(int64(p))
	return p
}
