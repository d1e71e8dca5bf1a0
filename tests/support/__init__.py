"""Shared test support: a recording upstream server and Envoy config builders."""
