using LiveMigration.Coordinator.Api;
using LiveMigration.Coordinator.Hosting;
using LiveMigration.Shared.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;

namespace LiveMigration.Coordinator.Tests.Api;

/// <summary>How the Coordinator takes its two tokens: from files or the environment, never the command line, and never a viewer alone.</summary>
public sealed class ApiTokenConfigurationTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("lsm-tokens-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private static CoordinatorSettings Settings(params (string Key, string Value)[] values) =>
        CoordinatorConfiguration.From(new ConfigurationBuilder()
            .AddInMemoryCollection(values.Select(v => new KeyValuePair<string, string?>(v.Key, v.Value)))
            .Build());

    private static HttpRequest Bearer(string token)
    {
        var request = new DefaultHttpContext().Request;
        request.Headers.Authorization = "Bearer " + token;
        return request;
    }

    [Fact]
    public void The_viewer_token_file_beside_the_operators_gives_each_token_its_role()
    {
        var operatorFile = Path.Combine(_folder, ApiTokenFile.FileName);
        var viewerFile = Path.Combine(_folder, ApiTokenFile.ViewerFileName);
        var operatorToken = ApiTokenFile.ReadOrCreate(operatorFile);
        var viewerToken = ApiTokenFile.ReadOrCreate(viewerFile);

        var tokens = Assert.IsType<ApiTokens>(Settings(("Coordinator:ApiTokenFile", operatorFile), ("Coordinator:ViewerTokenFile", viewerFile)).Tokens);

        Assert.Equal(ApiRole.Operator, tokens.RoleOf(Bearer(operatorToken)));
        Assert.Equal(ApiRole.Viewer, tokens.RoleOf(Bearer(viewerToken)));
        Assert.Null(tokens.RoleOf(Bearer(viewerToken + "x")));
        Assert.Null(tokens.RoleOf(new DefaultHttpContext().Request));
    }

    [Fact]
    public void A_viewer_token_alone_or_equal_to_the_operators_is_refused()
    {
        var alone = Assert.Throws<ArgumentException>(() => Settings(("Coordinator:ViewerToken", "viewer-secret")));
        Assert.Contains("needs an operator token", alone.Message);

        var same = Assert.Throws<ArgumentException>(() => Settings(("Coordinator:ApiToken", "same-secret"), ("Coordinator:ViewerToken", "same-secret")));
        Assert.Contains("equals the operator token", same.Message);
        Assert.Throws<ArgumentException>(() => new ApiTokens("same-secret", "same-secret"));
    }

    [Fact]
    public void A_token_on_the_command_line_is_refused_for_either_role()
    {
        foreach (var arguments in new[] { new[] { "--viewer-token", "x" }, ["--viewer-token=x"], ["--api-token", "x"] })
        {
            var refused = Assert.Throws<ArgumentException>(() => CoordinatorConfiguration.RefuseSecretArguments(arguments));
            Assert.Contains("-file FILE", refused.Message);
        }
        CoordinatorConfiguration.RefuseSecretArguments(["--viewer-token-file", "/etc/lsm/viewer-token"]);
    }
}
