"""Versioned prompt templates, shipped as package data (rag_rec.prompts)."""
