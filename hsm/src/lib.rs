//! One seam for keys: PKCS#11 HSMs through cryptoki, and a file backend for development

#![forbid(unsafe_code)]
