// The fingerprint of the sources this library was built from (jaxvgg/ops/csrc_fingerprint.py, passed in
// by setup.py), which native.py compares with the checkout's before it registers any kernel.
extern "C" __attribute__((visibility("default"))) const char* jaxvgg_csrc_fingerprint() {
  return JAXVGG_CSRC_FINGERPRINT;
}
