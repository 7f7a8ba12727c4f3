package consulstore

import (
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/svcreg/caddy-svcreg/registry"
)

func TestConsulInstance(t *testing.T) {
	c := &Store{opts: Options{VersionTag: "version="}}
	meta := &Store{opts: Options{VersionTag: "ver:", VersionMeta: "version"}}
	node := &api.Node{Node: "n1", Address: "10.0.0.1"}
	for _, tc := range []struct {
		name     string
		backend  *Store
		svc      api.AgentService
		versions []string
		ep       registry.Endpoint
		err      string
	}{
		{"node address", c, api.AgentService{Port: 80, Tags: []string{"version=v1"}},
			[]string{"v1"}, registry.Endpoint{Address: "10.0.0.1:80", Weight: 1}, ""},
		{"service address", c, api.AgentService{Address: "users.internal", Port: 8080, Tags: []string{"version=v1"}},
			[]string{"v1"}, registry.Endpoint{Address: "users.internal:8080", Weight: 1}, ""},
		{"ipv6", c, api.AgentService{Address: "::1", Port: 8080, Tags: []string{"version=v1"}},
			[]string{"v1"}, registry.Endpoint{Address: "[::1]:8080", Weight: 1}, ""},
		{"weight", c, api.AgentService{Port: 80, Tags: []string{"version=v1"}, Weights: api.AgentWeights{Passing: 7}},
			[]string{"v1"}, registry.Endpoint{Address: "10.0.0.1:80", Weight: 7}, ""},
		{"weight over 100", c, api.AgentService{Port: 80, Tags: []string{"version=v1"}, Weights: api.AgentWeights{Passing: 250}},
			[]string{"v1"}, registry.Endpoint{Address: "10.0.0.1:80", Weight: 100}, ""},
		{"negative weight", c, api.AgentService{Port: 80, Tags: []string{"version=v1"}, Weights: api.AgentWeights{Passing: -2}},
			[]string{"v1"}, registry.Endpoint{Address: "10.0.0.1:80", Weight: 1}, ""},
		{"drained by metadata", c, api.AgentService{Port: 80, Tags: []string{"version=v1"}, Weights: api.AgentWeights{Passing: 3}, Meta: map[string]string{"weight": "0"}},
			[]string{"v1"}, registry.Endpoint{Address: "10.0.0.1:80", Weight: registry.Drained}, ""},
		{"weight by metadata", c, api.AgentService{Port: 80, Tags: []string{"version=v1"}, Weights: api.AgentWeights{Passing: 3}, Meta: map[string]string{"weight": "9"}},
			[]string{"v1"}, registry.Endpoint{Address: "10.0.0.1:80", Weight: 9}, ""},
		{"bad weight metadata", c, api.AgentService{Port: 80, Tags: []string{"version=v1"}, Meta: map[string]string{"weight": "heavy"}},
			nil, registry.Endpoint{}, `service metadata weight="heavy"`},
		{"two versions", c, api.AgentService{Port: 80, Tags: []string{"version=v1", "x", "version=v2", "version=v1"}},
			[]string{"v1", "v2"}, registry.Endpoint{Address: "10.0.0.1:80", Weight: 1}, ""},
		{"meta wins over tags", meta, api.AgentService{Port: 80, Tags: []string{"ver:v1"}, Meta: map[string]string{"version": "v2"}},
			[]string{"v2"}, registry.Endpoint{Address: "10.0.0.1:80", Weight: 1}, ""},
		{"tag without meta", meta, api.AgentService{Port: 80, Tags: []string{"ver:v1"}},
			[]string{"v1"}, registry.Endpoint{Address: "10.0.0.1:80", Weight: 1}, ""},
		{"no version", c, api.AgentService{Port: 80, Tags: []string{"v1"}}, nil, registry.Endpoint{}, "no version: want a tag version=<version>"},
		{"other prefix", meta, api.AgentService{Port: 80, Tags: []string{"version=v1"}}, nil, registry.Endpoint{},
			"no version: want a tag ver:<version> or service metadata version"},
		{"bad version", c, api.AgentService{Port: 80, Tags: []string{"version=v 1"}}, nil, registry.Endpoint{}, `invalid version name "v 1"`},
		{"bad meta version", meta, api.AgentService{Port: 80, Meta: map[string]string{"version": "../"}}, nil, registry.Endpoint{}, `invalid version name "../"`},
		{"no port", c, api.AgentService{Tags: []string{"version=v1"}}, nil, registry.Endpoint{}, "port must be a number from 1 to 65535"},
		{"bad address", c, api.AgentService{Address: "a b", Port: 80, Tags: []string{"version=v1"}}, nil, registry.Endpoint{}, "invalid address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := tc.svc
			versions, ep, err := tc.backend.instance(&api.ServiceEntry{Node: node, Service: &svc})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(versions, tc.versions) || ep.Address != tc.ep.Address || ep.Weight != tc.ep.Weight {
				t.Errorf("got %q %+v %v, want %q %+v", versions, ep, err, tc.versions, tc.ep)
			}
		})
	}
}

func TestConsulNextIndex(t *testing.T) {
	for _, tc := range []struct {
		name            string
		sent, got, want uint64
	}{
		{"first read", 0, 42, 42},
		{"moved on", 42, 50, 50},
		{"wait expired", 42, 42, 42},
		{"went backwards", 42, 7, 0},
		{"zero after a full read", 0, 0, 1},
		{"zero after a blocking one", 42, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := nextIndex(tc.sent, tc.got); got != tc.want {
				t.Errorf("nextIndex(%d, %d) = %d, want %d", tc.sent, tc.got, got, tc.want)
			}
		})
	}
}
