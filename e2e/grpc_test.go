package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

// grpcBackend is a real gRPC server (the standard health service) that
// names itself in the "backend" response header.
func grpcBackend(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		_ = grpc.SetHeader(ctx, metadata.Pairs("backend", name))
		return handler(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// TestGRPCTraffic routes gRPC calls, /<package.Service>/<Method>, to the
// registered service of that name, through a real gRPC client and
// servers: the version from the split, the header, or an alias in it,
// and a live change of the split.
func TestGRPCTraffic(t *testing.T) {
	v1, v2 := grpcBackend(t, "v1"), grpcBackend(t, "v2")
	c := startCaddy(t, fmt.Sprintf(`servers {
		protocols h1 h2c
	}
	service_registry {
		service grpc.health.v1.Health v1 %s
		service grpc.health.v1.Health v2 %s
		traffic grpc.health.v1.Health {
			split v1 100
			alias canary v2
		}
	}`, v1, v2), `{http} {
	service_proxy {
		transport service_http {
			versions h2c
		}
	}
}`, caddyOpts{})
	conn, err := grpc.NewClient(c.HTTP, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	call := func(version string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if version != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "x-service-version", version)
		}
		var hdr metadata.MD
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&hdr))
		if err != nil {
			return "", err
		}
		if resp.Status != healthpb.HealthCheckResponse_SERVING {
			return "", fmt.Errorf("status %v", resp.Status)
		}
		if b := hdr.Get("backend"); len(b) == 1 {
			return b[0], nil
		}
		return "", fmt.Errorf("no backend header in %v", hdr)
	}
	for _, tc := range []struct{ header, want string }{
		{"", "v1"}, {"v2", "v2"}, {"canary", "v2"}, {"v1", "v1"},
	} {
		for range 5 {
			got, err := call(tc.header)
			if err != nil || got != tc.want {
				t.Fatalf("Check with version header %q: %q, %v; want %s", tc.header, got, err, tc.want)
			}
		}
	}
	if _, err := call("v9"); err == nil {
		t.Error("a call naming an unknown version succeeded")
	}
	if status, body := c.AdminDo(http.MethodPut, "/service_registry/traffic/grpc.health.v1.Health", "application/json", `{"split":{"v2":100}}`); status != http.StatusOK {
		t.Fatalf("PUT: %d %s", status, body)
	}
	if got, err := call(""); err != nil || got != "v2" {
		t.Errorf("after the PUT: %q, %v; want v2", got, err)
	}
}
