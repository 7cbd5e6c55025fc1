// A wrapper module that pins the tool's version for `make k8s-tools`: `go install` refuses the tool's own module
// (it has replace directives), so it is built from here, with go.sum locking every dependency.

//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
