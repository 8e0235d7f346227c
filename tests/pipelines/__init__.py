"""Tests of sohes_hf.pipelines."""
