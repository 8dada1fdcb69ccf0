//! ECR Public (`public.ecr.aws`). Its API lives only in us-east-1; its registry uses the Bearer
//! token flow, with the `ecr-public:GetAuthorizationToken` token as the Basic credentials for
//! the token service (<https://docs.aws.amazon.com/AmazonECR/latest/public/public-registries.html>).
//! Repository names in pushes are `<alias>/<name>`; the API knows them as `<name>`.

use aws_sdk_ecrpublic::Client;

use super::{AwsError, api_error, decode_authorization_token};
use crate::registry::BasicCredentials;

pub const HOST: &str = "public.ecr.aws";
pub const REGION: &str = "us-east-1";

/// The Basic credentials for the public registry's token service.
pub async fn login(client: &Client) -> Result<BasicCredentials, AwsError> {
    let output = client
        .get_authorization_token()
        .send()
        .await
        .map_err(|e| api_error("ecr-public:GetAuthorizationToken", None, &e))?;
    let token = output
        .authorization_data()
        .and_then(|data| data.authorization_token())
        .ok_or_else(|| AwsError::Api {
            action: "ecr-public:GetAuthorizationToken".into(),
            message: "the answer holds no authorization token".into(),
        })?;
    decode_authorization_token(token)
}

/// The repository name the ECR Public API uses: the push name without its registry alias.
pub fn api_name(repository: &str) -> Result<&str, AwsError> {
    repository
        .split_once('/')
        .map(|(_, name)| name)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| {
            AwsError::Invalid(format!(
                "ECR Public repositories are named <registry alias>/<name>, e.g. myalias/app; \
                 got {repository:?}"
            ))
        })
}

/// Makes sure the public repository exists; returns whether it was created.
pub async fn ensure_repository(
    client: &Client,
    repository: &str,
    create: bool,
) -> Result<bool, AwsError> {
    let name = api_name(repository)?;
    match client
        .describe_repositories()
        .repository_names(name)
        .send()
        .await
    {
        Ok(_) => return Ok(false),
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_repository_not_found_exception()) => {}
        Err(error) => {
            return Err(api_error(
                "ecr-public:DescribeRepositories",
                Some(name),
                &error,
            ));
        }
    }
    if !create {
        return Err(AwsError::RepositoryMissing {
            repository: repository.to_owned(),
            registry_id: HOST.to_owned(),
        });
    }
    match client
        .create_repository()
        .repository_name(name)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_repository_already_exists_exception()) =>
        {
            Ok(false)
        }
        Err(error) => Err(api_error("ecr-public:CreateRepository", Some(name), &error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecrpublic::operation::create_repository::{
        CreateRepositoryError, CreateRepositoryOutput,
    };
    use aws_sdk_ecrpublic::operation::describe_repositories::{
        DescribeRepositoriesError, DescribeRepositoriesOutput,
    };
    use aws_sdk_ecrpublic::operation::get_authorization_token::{
        GetAuthorizationTokenError, GetAuthorizationTokenOutput,
    };
    use aws_sdk_ecrpublic::types::AuthorizationData;
    use aws_sdk_ecrpublic::types::error::RepositoryNotFoundException;
    use aws_smithy_mocks::{mock, mock_client};
    use base64::Engine as _;

    #[tokio::test]
    async fn login_decodes_the_public_token() {
        let token = base64::engine::general_purpose::STANDARD.encode("AWS:public-secret");
        let rule = mock!(Client::get_authorization_token).then_output(move || {
            GetAuthorizationTokenOutput::builder()
                .authorization_data(
                    AuthorizationData::builder()
                        .authorization_token(token.clone())
                        .build(),
                )
                .build()
        });
        let client = mock_client!(aws_sdk_ecrpublic, [&rule]);
        let credentials = login(&client).await.unwrap();
        assert_eq!(credentials.username, "AWS");
        assert_eq!(credentials.password.expose(), "public-secret");
        assert_eq!(rule.num_calls(), 1);
    }

    #[tokio::test]
    async fn login_denied_names_the_iam_action() {
        let rule = mock!(Client::get_authorization_token).then_error(|| {
            GetAuthorizationTokenError::generic(
                aws_sdk_ecrpublic::error::ErrorMetadata::builder()
                    .code("AccessDeniedException")
                    .message("not allowed")
                    .build(),
            )
        });
        let client = mock_client!(aws_sdk_ecrpublic, [&rule]);
        let error = login(&client).await.unwrap_err().to_string();
        assert!(
            error.contains("ecr-public:GetAuthorizationToken"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn missing_repository_is_created_under_its_api_name() {
        let describe = mock!(Client::describe_repositories).then_error(|| {
            DescribeRepositoriesError::RepositoryNotFoundException(
                RepositoryNotFoundException::builder().build(),
            )
        });
        let create = mock!(Client::create_repository)
            .match_requests(|request| request.repository_name() == Some("app"))
            .then_output(|| CreateRepositoryOutput::builder().build());
        let client = mock_client!(aws_sdk_ecrpublic, [&describe, &create]);
        assert!(
            ensure_repository(&client, "myalias/app", true)
                .await
                .unwrap()
        );
        assert_eq!(create.num_calls(), 1);
    }

    #[tokio::test]
    async fn existing_repository_is_left_alone() {
        let describe = mock!(Client::describe_repositories)
            .then_output(|| DescribeRepositoriesOutput::builder().build());
        let create = mock!(Client::create_repository)
            .then_error(|| CreateRepositoryError::unhandled("must not be called"));
        let client = mock_client!(aws_sdk_ecrpublic, [&describe, &create]);
        assert!(
            !ensure_repository(&client, "myalias/app", true)
                .await
                .unwrap()
        );
        assert_eq!(create.num_calls(), 0);
    }

    #[tokio::test]
    async fn missing_repository_without_create_is_an_error() {
        let describe = mock!(Client::describe_repositories).then_error(|| {
            DescribeRepositoriesError::RepositoryNotFoundException(
                RepositoryNotFoundException::builder().build(),
            )
        });
        let client = mock_client!(aws_sdk_ecrpublic, [&describe]);
        let error = ensure_repository(&client, "myalias/app", false)
            .await
            .unwrap_err();
        assert!(
            matches!(error, AwsError::RepositoryMissing { .. }),
            "{error}"
        );
    }

    #[test]
    fn public_names_need_an_alias() {
        assert_eq!(api_name("alias/app").unwrap(), "app");
        assert_eq!(api_name("alias/team/app").unwrap(), "team/app");
        assert!(api_name("app").is_err());
    }
}
