using System.ComponentModel;
using LiveMigration.Cli.Api;
using Spectre.Console;
using Spectre.Console.Cli;

namespace LiveMigration.Cli.Commands;

/// <summary>The options every command takes (after the command's name: <c>lsm cluster show --json</c>).</summary>
public class GlobalSettings : CommandSettings
{
    public const string DefaultApi = "http://127.0.0.1:9110";

    [CommandOption("--api <URL>")]
    [Description("The Coordinator's API (default: env LSM_API, else " + DefaultApi + "). Example: --api http://10.0.0.5:9110")]
    public string? Api { get; set; }

    [CommandOption("--token <TOKEN>")]
    [Description("The Coordinator's API token, sent as Authorization: Bearer (default: env LSM_TOKEN). Example: --token \"$(cat ~/.lsm-token)\"")]
    public string? Token { get; set; }

    [CommandOption("--json")]
    [Description("Print the API's JSON (stable field names, for scripts) instead of tables")]
    public bool Json { get; set; }

    private string ApiText => Api ?? (Environment.GetEnvironmentVariable("LSM_API") is { Length: > 0 } env ? env : DefaultApi);

    public Uri ApiUri => new(ApiText);

    public override ValidationResult Validate()
    {
        var text = ApiText;
        if (!Uri.TryCreate(text, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
            return ValidationResult.Error($"--api '{text}' is not an http:// or https:// URL, e.g. {DefaultApi}");
        return ValidationResult.Success();
    }

    private string? TokenText => Token is { Length: > 0 } t ? t : Environment.GetEnvironmentVariable("LSM_TOKEN") is { Length: > 0 } env ? env : null;

    public LsmApiClient Client() => new(ApiUri, TokenText);
}
