"""Tests of sohes_hf.modeling."""
