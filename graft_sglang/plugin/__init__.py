"""The SGLang plugin: registers ``--speculative-algorithm GRAFT`` (entry point
``sglang.srt.plugins: graft = graft_sglang.plugin.registration:register``)."""
