"""How things are shown: screens (pure) and the messages that show them."""
