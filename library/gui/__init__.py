"""The Gradio GUI: a view over the option schema, the trainers and the tools (the only gradio user)."""
