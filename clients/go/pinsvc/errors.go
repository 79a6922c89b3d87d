package pinsvc

import (
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Domain is the google.rpc.ErrorInfo domain of the reasons the agent sends.
const Domain = "pinsvc.io"

// Error is a failed call to an agent. It keeps the gRPC status code, so both
// errors.As(err, &*Error) and status.Code(err) see it.
type Error struct {
	Op      string     // the RPC, e.g. "Apply"
	Code    codes.Code // e.g. codes.InvalidArgument
	Message string     // the agent's message, naming the bad value
	// Reason is the kind of failure the agent names (its google.rpc.ErrorInfo), e.g.
	// "REGISTRY" or "NOT_FOUND"; empty when the status did not come from the agent
	// (unreachable, deadline passed) or from an older agent.
	Reason string
	status *status.Status
}

// Retryable reports whether the same call may succeed later because it did not get the
// agent's answer: Unavailable or DeadlineExceeded without a Reason. A failure the agent
// reports, such as an unreachable registry, is its answer.
func (e *Error) Retryable() bool {
	return (e.Code == codes.Unavailable || e.Code == codes.DeadlineExceeded) && e.Reason == ""
}

func (e *Error) Error() string {
	return fmt.Sprintf("pinsvc %s: %s: %s", e.Op, e.Code, e.Message)
}

// GRPCStatus makes status.FromError and status.Code return the agent's status.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Code is the gRPC code of err: the agent's code for an *Error or a gRPC status error,
// codes.OK for nil and codes.Unknown for anything else.
func Code(err error) codes.Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return status.Code(err)
}

// wrap converts an error of a gRPC call into an *Error, once, at the call.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	s, _ := status.FromError(err)
	return &Error{Op: op, Code: s.Code(), Message: s.Message(), Reason: reason(s), status: s}
}

// reason is the ErrorInfo reason of domain pinsvc.io in the status details, or "".
func reason(s *status.Status) string {
	for _, detail := range s.Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok && info.GetDomain() == Domain {
			return info.GetReason()
		}
	}
	return ""
}
