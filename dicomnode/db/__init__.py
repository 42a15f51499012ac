"""Database: schema and session factory."""
