"""The on-device test runner: a pytest suite and plugin that gate a release on a real device.

`edge-sdk test out/jetson-orin-nano --agent http://jetson.local:8765` (device_tests.runner) runs the
built-in suite (the test_*.py modules here) over each bundle through the device's agent; the plugin
(device_tests.plugin, a pytest11 entry point) gives your own tests the same fixtures. See docs/device-tests.md.
"""
