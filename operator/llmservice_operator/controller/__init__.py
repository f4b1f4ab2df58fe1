"""kopf handlers: render, apply children with server-side apply, report status. Thin:
decisions live in render/ (what to create, what status means) and gke/."""
