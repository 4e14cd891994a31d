package echo

import "context"

// Server implements Echo.
type Server struct{}

// Ping returns at once.
func (Server) Ping(context.Context, Echo_ping) error { return nil }

// Echo returns the data it was given.
func (Server) Echo(_ context.Context, call Echo_echo) error {
	d, err := call.Args().Data()
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetData(d)
}

// Sum reads every byte of the data where it is (over shared memory, in the
// caller's pool) and returns their sum and count.
func (Server) Sum(_ context.Context, call Echo_sum) error {
	d, err := call.Args().Data()
	if err != nil {
		return err
	}
	var s uint64
	for _, b := range d {
		s += uint64(b)
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetSum(s)
	res.SetLength(uint64(len(d)))
	return nil
}
