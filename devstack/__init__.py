"""Local stand-ins for the cloud: a throwaway Postgres with Supabase's shim, RunPod's serverless
platform (with real or synthetic workers), Supabase Storage, and the stack and demo that run them."""
