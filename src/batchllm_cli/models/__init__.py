"""Llama-family models: config, decoder, rotary table, KV cache allocation and weight loading."""
