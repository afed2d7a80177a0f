"""One aiogram Router per user-facing feature."""
