"""The HTTP app: the functions in supabase/functions-py/, the progress stream, and the page."""
