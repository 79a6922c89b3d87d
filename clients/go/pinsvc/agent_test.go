package pinsvc_test

// Tests against a real agent (tests/e2e/test_goclient.py starts one against a real CRI-O
// and registry and sets the variables). They skip only when the variables are unset.
//
//	PINSVC_TEST_ENDPOINT      the agent's endpoint, e.g. unix:///tmp/agent.sock
//	PINSVC_TEST_IMAGES        digest references the registry serves, space or comma separated
//	PINSVC_TEST_TLS_ENDPOINT  the agent's mutual TLS endpoint, host:port (with the three below)
//	PINSVC_TEST_TLS_CERT, PINSVC_TEST_TLS_KEY, PINSVC_TEST_TLS_CA  client certificate, key, CA

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/pinsvc/pinsvc/clients/go/pinsvc"
	pb "github.com/pinsvc/pinsvc/clients/go/pinsvcv1"
)

// SetName is the set the tests apply; the e2e test looks for it.
const SetName = "go-client"

func agent(t *testing.T) (*pinsvc.Client, []string) {
	t.Helper()
	endpoint, images := os.Getenv("PINSVC_TEST_ENDPOINT"), os.Getenv("PINSVC_TEST_IMAGES")
	if endpoint == "" || images == "" {
		t.Skip("PINSVC_TEST_ENDPOINT and PINSVC_TEST_IMAGES are not set (tests/e2e/test_goclient.py sets them)")
	}
	c, err := pinsvc.Dial(endpoint, pinsvc.Options{Node: "go-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, strings.FieldsFunc(images, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' })
}

func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestAgentCheckSpace(t *testing.T) {
	c, images := agent(t)
	plan, err := c.CheckSpace(timeout(t, time.Minute), images...)
	if err != nil {
		t.Fatal(err)
	}
	var planned []string
	var newBytes uint64
	for _, p := range plan.Images {
		planned = append(planned, p.Image)
		newBytes += p.NewBytes
		if !p.Present && (p.CompressedBytes == 0 || p.Layers == 0) {
			t.Errorf("%s is missing but has %d bytes in %d layers", p.Image, p.CompressedBytes, p.Layers)
		}
	}
	slices.Sort(planned)
	if want := slices.Sorted(slices.Values(images)); !slices.Equal(planned, slices.Compact(want)) {
		t.Errorf("planned %v, want %v", planned, want)
	}
	if newBytes != plan.CompressedBytes {
		t.Errorf("new bytes of the images add up to %d, plan says %d", newBytes, plan.CompressedBytes)
	}
	if !plan.Fits || plan.FreeBytes == 0 || plan.Mountpoint == "" || plan.Verdict == "" {
		t.Errorf("plan: %v", plan)
	}
}

func TestAgentApplyPinsASet(t *testing.T) {
	c, images := agent(t)
	generation := time.Now().Unix() // never lower than one an earlier run applied
	var events []*pb.ApplyEvent
	final, err := c.Apply(timeout(t, 3*time.Minute), []pinsvc.Set{{Name: SetName, Generation: generation, Images: images}},
		func(e *pb.ApplyEvent) { events = append(events, e) }, pinsvc.WithParallelism(2))
	if err != nil {
		t.Fatal(err)
	}
	if len(events) == 0 || events[len(events)-1].GetStatus() == nil || final != events[len(events)-1].GetStatus() {
		t.Fatalf("the stream must end with the status event: %d events", len(events))
	}
	ready := map[string]bool{}
	var stages []pb.StageEvent_Stage
	for _, e := range events {
		if i := e.GetImage(); i != nil && (i.Kind == pb.ImageEvent_PULLED || i.Kind == pb.ImageEvent_ALREADY_PRESENT) {
			ready[i.Image] = true
		}
		if s := e.GetStage(); s != nil {
			stages = append(stages, s.Stage)
		}
	}
	for _, image := range images {
		if !ready[image] {
			t.Errorf("no PULLED or ALREADY_PRESENT event for %s", image)
		}
	}
	if !slices.Contains(stages, pb.StageEvent_PINS_VERIFIED) {
		t.Errorf("stages %v lack PINS_VERIFIED", stages)
	}

	st, err := c.GetStatus(timeout(t, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(st.PinnedImageSets, func(s *pb.PinnedImageSetStatus) bool { return s.Name == SetName })
	if i < 0 {
		t.Fatalf("set %s not in the status: %v", SetName, st.PinnedImageSets)
	}
	if s := st.PinnedImageSets[i]; s.DesiredGeneration != generation || s.CurrentGeneration != generation || s.LastFailedGeneration != 0 {
		t.Errorf("set status %v, want generation %d desired and current", s, generation)
	}
	for _, image := range images {
		j := slices.IndexFunc(st.Images, func(d *pb.ImageDetail) bool { return d.Image == image })
		if j < 0 {
			t.Errorf("%s not in the status", image)
		} else if d := st.Images[j]; !d.Pinned || !d.Present || d.Phase != pb.ImagePhase_IMAGE_PHASE_PINNED {
			t.Errorf("%s: pinned=%v present=%v phase=%v, want pinned by the runtime", image, d.Pinned, d.Present, d.Phase)
		}
	}
	for _, cond := range st.Conditions {
		if cond.Type == "PinnedImageSetsDegraded" && cond.Status != "False" {
			t.Errorf("degraded: %v", cond)
		}
	}
}

func TestAgentRejectsABadReferenceWithInvalidArgument(t *testing.T) {
	c, images := agent(t)
	const bad = "registry.invalid/app:latest" // a tag, not a digest
	_, err := c.CheckSpace(timeout(t, time.Minute), images[0], bad)
	if pinsvc.Code(err) != codes.InvalidArgument || status.Code(err) != codes.InvalidArgument {
		t.Fatalf("CheckSpace: %v, want InvalidArgument", err)
	}
	if !strings.Contains(err.Error(), bad) {
		t.Errorf("the error does not name %q: %v", bad, err)
	}

	before, err := c.GetStatus(timeout(t, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Apply(timeout(t, time.Minute), []pinsvc.Set{{Name: SetName, Generation: time.Now().Unix() + 1, Images: []string{bad}}}, nil)
	var e *pinsvc.Error
	if !errors.As(err, &e) || e.Code != codes.InvalidArgument || e.Op != "Apply" || !strings.Contains(e.Message, bad) {
		t.Fatalf("Apply: %v, want InvalidArgument naming %q", err, bad)
	}
	after, err := c.GetStatus(timeout(t, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&pb.NodeStatus{PinnedImageSets: before.PinnedImageSets}, &pb.NodeStatus{PinnedImageSets: after.PinnedImageSets}) {
		t.Errorf("a rejected Apply changed the sets:\nbefore %v\nafter  %v", before.PinnedImageSets, after.PinnedImageSets)
	}
}

func TestAgentOverMutualTLS(t *testing.T) {
	endpoint := os.Getenv("PINSVC_TEST_TLS_ENDPOINT")
	files := pinsvc.TLSFiles{Cert: os.Getenv("PINSVC_TEST_TLS_CERT"), Key: os.Getenv("PINSVC_TEST_TLS_KEY"), CA: os.Getenv("PINSVC_TEST_TLS_CA")}
	if endpoint == "" || files.Cert == "" || files.Key == "" || files.CA == "" {
		t.Skip("PINSVC_TEST_TLS_ENDPOINT, _CERT, _KEY and _CA are not set (tests/e2e/test_goclient.py sets them)")
	}
	c, err := pinsvc.Dial(endpoint, pinsvc.Options{TLS: &files})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.GetStatus(timeout(t, time.Minute))
	if err != nil || st.Node == "" {
		t.Fatalf("GetStatus over mutual TLS: %v, %v", st, err)
	}

	plain, err := pinsvc.Dial(endpoint, pinsvc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := plain.GetStatus(timeout(t, time.Minute)); pinsvc.Code(err) != codes.Unavailable {
		t.Errorf("GetStatus in plaintext to the mutual TLS endpoint: %v, want Unavailable", err)
	}
}
