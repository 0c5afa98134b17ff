"""An EAGLE-3 draft head for the embedded target (SmolLM2-135M-Instruct): prompts, self-distilled
training data, the head, its training, SGLang-format export and loading."""
