"""Where agents run: one interface (base.Backend), two implementations."""
