"""itdr-batch."""
