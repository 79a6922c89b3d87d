// Package pinsvc is a small client for the pinsvc node agent's PinService
// (proto/pinsvc/v1/pinsvc.proto): connect over a unix socket, plain TCP or TCP with
// mutual TLS, check space, apply sets with streamed progress, read the node status.
// The generated stubs are in package pinsvcv1.
package pinsvc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	pb "github.com/pinsvc/pinsvc/clients/go/pinsvcv1"
)

// NodeMetadata is the metadata key that names the node the caller means.
const NodeMetadata = "x-pinsvc-node"

// TLSFiles are the client side of the agent's mutual TLS, as PEM files: the client
// certificate (chain), its private key and the CA the agent's certificate must chain to.
// ServerName, when set, is checked in the agent's certificate instead of the endpoint's
// host (agents reached by IP whose certificate names the node).
type TLSFiles struct {
	Cert, Key, CA string
	ServerName    string
}

// Options of Dial. The zero value connects without TLS and sends no node name.
type Options struct {
	// TLS, for TCP endpoints: mutual TLS with these files. Unix sockets never use TLS.
	TLS *TLSFiles
	// Node, when set, is sent as x-pinsvc-node metadata on every call.
	Node string
}

// Client talks to one agent. It is safe for concurrent use; Close it when done.
type Client struct {
	conn *grpc.ClientConn
	rpc  pb.PinServiceClient
	node string
}

// Set is a named set of digest references to pin, like OpenShift's PinnedImageSet.
type Set struct {
	Name       string
	Generation int64
	Images     []string
}

// Target turns an endpoint into a gRPC target: "unix:///path" and "host:port" are kept,
// a bare "/path" becomes "unix:///path". It fails on an empty endpoint or a scheme other
// than unix.
func Target(endpoint string) (string, error) {
	switch {
	case endpoint == "":
		return "", errors.New("pinsvc: empty endpoint (want unix:///path, /path or host:port)")
	case strings.HasPrefix(endpoint, "/"):
		return "unix://" + endpoint, nil
	case strings.HasPrefix(endpoint, "unix:"):
		return endpoint, nil
	case strings.Contains(endpoint, "://"):
		return "", fmt.Errorf("pinsvc: endpoint %q: only unix:///path, /path or host:port", endpoint)
	}
	return endpoint, nil
}

// Dial prepares a connection to the agent at endpoint (see Target). Like grpc.NewClient
// it does not connect yet: an unreachable agent shows in the first call, as Unavailable.
// A TLS file that cannot be read fails here, naming the file.
func Dial(endpoint string, opts Options) (*Client, error) {
	target, err := Target(endpoint)
	if err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	if opts.TLS != nil && !strings.HasPrefix(target, "unix:") {
		config, err := opts.TLS.config()
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(config)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("pinsvc: endpoint %q: %w", endpoint, err)
	}
	return &Client{conn: conn, rpc: pb.NewPinServiceClient(conn), node: opts.Node}, nil
}

func (t *TLSFiles) config() (*tls.Config, error) {
	ca, err := readPEM("TLS CA", t.CA)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("pinsvc: TLS CA %s: no certificate in it", t.CA)
	}
	certPEM, err := readPEM("TLS certificate", t.Cert)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readPEM("TLS key", t.Key)
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pinsvc: TLS certificate %s and key %s: %w", t.Cert, t.Key, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: roots,
		ServerName: t.ServerName, MinVersion: tls.VersionTLS12}, nil
}

func readPEM(what, path string) ([]byte, error) {
	if path == "" {
		return nil, fmt.Errorf("pinsvc: mutual TLS needs Cert, Key and CA: %s not given", what)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pinsvc: %s %s: cannot read: %w", what, path, err)
	}
	if !strings.Contains(string(data), "-----BEGIN ") {
		return nil, fmt.Errorf("pinsvc: %s %s: not a PEM file", what, path)
	}
	return data, nil
}

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) outgoing(ctx context.Context) context.Context {
	if c.node == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, NodeMetadata, c.node)
}

// CheckSpace sizes what pulling images would take and says whether it fits. It touches
// nothing; a bad reference fails with InvalidArgument.
func (c *Client) CheckSpace(ctx context.Context, images ...string) (*pb.SpacePlan, error) {
	plan, err := c.rpc.CheckSpace(c.outgoing(ctx), &pb.CheckSpaceRequest{Images: images})
	return plan, wrap("CheckSpace", err)
}

// GetStatus reads the node's status, with the pinned state of each image read live
// from the runtime.
func (c *Client) GetStatus(ctx context.Context) (*pb.NodeStatus, error) {
	st, err := c.rpc.GetStatus(c.outgoing(ctx), &pb.GetStatusRequest{})
	return st, wrap("GetStatus", err)
}

// ApplyOption changes the pull options of one Apply.
type ApplyOption func(*pb.PullOptions)

// WithParallelism sets the pulls in flight at once (0 = the agent's default).
func WithParallelism(n uint32) ApplyOption {
	return func(o *pb.PullOptions) { o.Parallelism = n }
}

// WithAttemptTimeout sets the per-attempt pull timeout (0 = no timeout; not given = the
// agent's default).
func WithAttemptTimeout(d time.Duration) ApplyOption {
	return func(o *pb.PullOptions) { o.AttemptTimeoutSeconds = proto.Float64(d.Seconds()) }
}

// Apply makes the node's pinned images exactly the union of sets (a set not listed is
// unpinned), calling onEvent (if not nil) with each progress event as it arrives. It
// returns the node status the stream ends with, and the error of the call: an Apply
// where a set failed returns both the final status and an *Error with the code of the
// first failure.
func (c *Client) Apply(ctx context.Context, sets []Set, onEvent func(*pb.ApplyEvent), opts ...ApplyOption) (*pb.NodeStatus, error) {
	req := &pb.ApplyRequest{Pull: &pb.PullOptions{}}
	for _, o := range opts {
		o(req.Pull)
	}
	for _, s := range sets {
		req.Sets = append(req.Sets, &pb.PinnedImageSet{Name: s.Name, Generation: s.Generation, Images: s.Images})
	}
	stream, err := c.rpc.Apply(c.outgoing(ctx), req)
	if err != nil {
		return nil, wrap("Apply", err)
	}
	var final *pb.NodeStatus
	for {
		event, err := stream.Recv()
		if err == io.EOF {
			return final, nil
		}
		if err != nil {
			return final, wrap("Apply", err)
		}
		if st := event.GetStatus(); st != nil {
			final = st
		}
		if onEvent != nil {
			onEvent(event)
		}
	}
}
