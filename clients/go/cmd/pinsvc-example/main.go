// Command pinsvc-example pins a set of images on one node through its agent, printing the
// progress, then the node's status.
//
//	pinsvc-example -endpoint unix:///run/pinsvc/pinsvc.sock -set web -generation 1 IMAGE...
//	pinsvc-example -endpoint node-a:9440 -tls-cert c.crt -tls-key c.key -tls-ca ca.crt -check-only IMAGE...
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/pinsvc/pinsvc/clients/go/pinsvc"
	pb "github.com/pinsvc/pinsvc/clients/go/pinsvcv1"
)

func main() {
	endpoint := flag.String("endpoint", "unix:///run/pinsvc/pinsvc.sock", "agent endpoint: unix:///path, /path or host:port")
	set := flag.String("set", "example", "name of the set to pin")
	generation := flag.Int64("generation", 1, "generation of the set (never lower than one applied before)")
	checkOnly := flag.Bool("check-only", false, "only check space, pin nothing")
	var files pinsvc.TLSFiles
	flag.StringVar(&files.Cert, "tls-cert", "", "client certificate (PEM), for TCP endpoints")
	flag.StringVar(&files.Key, "tls-key", "", "private key (PEM) of -tls-cert")
	flag.StringVar(&files.CA, "tls-ca", "", "CA (PEM) the agent's certificate must chain to")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: pinsvc-example [flags] IMAGE@sha256:DIGEST...")
		os.Exit(2)
	}
	opts := pinsvc.Options{}
	if files != (pinsvc.TLSFiles{}) {
		opts.TLS = &files
	}
	if err := run(*endpoint, opts, *set, *generation, *checkOnly, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(endpoint string, opts pinsvc.Options, set string, generation int64, checkOnly bool, images []string) error {
	c, err := pinsvc.Dial(endpoint, opts)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	plan, err := c.CheckSpace(ctx, images...)
	if err != nil {
		return err
	}
	fmt.Println("space:", plan.Verdict)
	if checkOnly {
		return nil
	}
	if !plan.Fits {
		return fmt.Errorf("not pinned: the images do not fit: %s", plan.Verdict)
	}
	status, err := c.Apply(ctx, []pinsvc.Set{{Name: set, Generation: generation, Images: images}}, printEvent)
	if status != nil {
		for _, s := range status.PinnedImageSets {
			fmt.Printf("set %s: desired %d, current %d\n", s.Name, s.DesiredGeneration, s.CurrentGeneration)
		}
		for _, i := range status.Images {
			fmt.Printf("  %s %s pinned=%v\n", i.Phase, i.Image, i.Pinned)
		}
	}
	return err
}

func printEvent(e *pb.ApplyEvent) {
	switch {
	case e.GetImage() != nil:
		i := e.GetImage()
		fmt.Printf("image %-15s %s %s\n", i.Kind, i.Image, i.Reason)
	case e.GetStage() != nil:
		s := e.GetStage()
		fmt.Printf("stage %-15s %s\n", s.Stage, s.Message)
	}
}
