package balance

import (
	"slices"
	"testing"
)

func TestNewRotation(t *testing.T) {
	rot := NewRotation([]int{3, 1, 1})
	if want := []int32{0, 1, 0, 2, 0}; !slices.Equal(rot.schedule, want) {
		t.Errorf("schedule = %v, want %v (smooth weighted round robin)", rot.schedule, want)
	}
	if rot := NewRotation([]int{2, 2}); rot.schedule != nil {
		t.Errorf("equal weights: schedule = %v, want nil", rot.schedule)
	}
	// a drained host (weight 0) never comes
	if rot := NewRotation([]int{1, 0, 1}); !slices.Equal(rot.schedule, []int32{0, 2}) {
		t.Errorf("weights 1, 0, 1: schedule = %v, want [0 2]", rot.schedule)
	}
}
