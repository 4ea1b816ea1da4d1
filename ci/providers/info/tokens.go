package info

import (
	"strings"

	pulumitokens "github.com/pulumi/pulumi/sdk/v3/go/common/tokens"
)

// tfTok turns "docker:index/container:Container" into a resource type token.
func tfTok(s string) pulumitokens.Type { return pulumitokens.Type(s) }

// tfFnTok turns "docker:index/getNetwork:getNetwork" into a function token.
func tfFnTok(s string) pulumitokens.ModuleMember { return pulumitokens.ModuleMember(s) }

// lowerFirst is the module-member spelling of a type name (Container -> container).
func lowerFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToLower(s[:1]) + s[1:]
}
