"""The example defense and attack of docs/extending.md: outside the library, found through their configs'
``_target_`` (conf/defense/example.yaml, conf/attack/example.yaml); tests/test_extending.py runs them."""
