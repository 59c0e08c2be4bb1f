"""Local stand-ins for the cloud: a throwaway Postgres with Supabase's shim (more to come)."""
