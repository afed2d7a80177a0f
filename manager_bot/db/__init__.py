"""Durable state: models, sessions, repositories, migrations, FSM storage."""
