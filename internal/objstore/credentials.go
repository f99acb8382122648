package objstore

import (
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
)

// S3Credentials are static S3 credentials an Opener uses in place of the
// SDK's standard chain (the CSI driver gets them per request from the
// CO's secrets, so they cannot come from the process environment, which
// every pool of the process shares). String never shows the secret.
type S3Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string // optional
}

// String names the access key only.
func (c S3Credentials) String() string { return "S3 access key " + c.AccessKeyID }

// loadOption makes the SDK use these credentials; nil when c is nil.
func (c *S3Credentials) loadOption() func(*config.LoadOptions) error {
	if c == nil {
		return nil
	}
	p := credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.SecretAccessKey, c.SessionToken)
	return config.WithCredentialsProvider(aws.NewCredentialsCache(p))
}
