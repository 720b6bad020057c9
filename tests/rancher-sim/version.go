package main

import (
	"fmt"
	"strconv"
	"strings"
)

// rancherVersion selects the release-specific behaviour the simulator reproduces.
type rancherVersion struct {
	major, minor, patch int
}

func parseRancherVersion(s string) (rancherVersion, error) {
	parts := strings.Split(strings.TrimPrefix(s, "v"), ".")
	if len(parts) < 2 || len(parts) > 3 {
		return rancherVersion{}, fmt.Errorf("--rancher-version %q: want vMAJOR.MINOR[.PATCH]", s)
	}
	nums := make([]int, 3)
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return rancherVersion{}, fmt.Errorf("--rancher-version %q: want vMAJOR.MINOR[.PATCH]", s)
		}
		nums[i] = n
	}
	v := rancherVersion{nums[0], nums[1], nums[2]}
	if v.major != 2 || v.minor < 8 {
		return rancherVersion{}, fmt.Errorf("--rancher-version %q: only 2.8 and later are simulated", s)
	}
	return v, nil
}

func (v rancherVersion) String() string {
	return fmt.Sprintf("v%d.%d.%d", v.major, v.minor, v.patch)
}

func (v rancherVersion) atLeast(minor int) bool { return v.minor >= minor }

// tokenInSecret: from 2.13 the CRT value lives in a crt-token-* Secret and the API fills it in.
func (v rancherVersion) tokenInSecret() bool { return v.atLeast(13) }
