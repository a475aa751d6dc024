package egress

// SetOffsetSource makes s take its TAI offset from f, and applies it now.
func SetOffsetSource(s *Stamper, f func() (int64, error)) error {
	s.readOffset = f
	return s.refreshOffset()
}
