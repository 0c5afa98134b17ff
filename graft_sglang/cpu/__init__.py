"""SGLang's own server on a CPU machine without an sgl-kernel CPU build.

``python -m graft_sglang.cpu.launch_server [launch_server arguments]`` sets what SGLang 0.5.23's CPU
path needs and hands every argument to ``python -m sglang.launch_server``. ``stand_in/`` holds a
pure-PyTorch ``sgl_kernel`` that only this launcher puts on the path (a real sgl-kernel, when
importable, is used instead); ``platform.py`` is the part the plugin's entry point installs in
every SGLang process of such a server.
"""
