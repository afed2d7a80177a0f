"""Use cases: each service owns one, and handlers only call them."""
