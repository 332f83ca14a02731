"""Everything that talks to PostgreSQL: settings, the embedded server, migrations, the SQL gateway."""
