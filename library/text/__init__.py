"""Prompt text as the AUTOMATIC1111 webui reads it: attention weights, prompt editing, weighted encoding."""
