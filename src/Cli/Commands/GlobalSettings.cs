using System.ComponentModel;
using LiveMigration.Cli.Api;
using LiveMigration.Cli.Local;
using LiveMigration.Shared.Hosting;
using Spectre.Console;
using Spectre.Console.Cli;

namespace LiveMigration.Cli.Commands;

/// <summary>The options every command takes (after the command's name: <c>lsm cluster show --json</c>).</summary>
public class GlobalSettings : CommandSettings
{
    public const string DefaultApi = "http://127.0.0.1:9110";

    [CommandOption("--api <URL>")]
    [Description("The Coordinator's API (default: env LSM_API, else " + DefaultApi + "). Example: --api https://10.0.0.5:9443 (beyond loopback the API speaks HTTPS only)")]
    public string? Api { get; set; }

    /// <summary>Refused (see <see cref="Validate"/>): kept so its use gets the reason and the alternatives, not "unknown option".</summary>
    [CommandOption("--token <TOKEN>", IsHidden = true)]
    public string? Token { get; set; }

    [CommandOption("--token-file <FILE>")]
    [Description("A file holding the Coordinator's API token (readable by you only: chmod 600), sent as Authorization: Bearer. Default: env LSM_TOKEN, " +
                 "else env LSM_TOKEN_FILE, else the token file of the local cluster serving --api on this machine (lsm local up makes it). Example: --token-file ~/.lsm-token")]
    public string? TokenFile { get; set; }

    [CommandOption("--ca-file <FILE>")]
    [Description("For an https:// API: trust only the CA certificates in FILE (PEM), e.g. the cluster CA that issued the API's certificate, " +
                 "instead of this machine's system store. Default: env LSM_CA_FILE. Example: --ca-file /etc/lsm/tls/ca.pem")]
    public string? CaFile { get; set; }

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
        if (Token is not null)
            return ValidationResult.Error("--token is refused: a command line is readable by every user of this machine. Use --token-file FILE " +
                                          "(chmod 600) or env LSM_TOKEN; a local cluster's token is found without either");
        return ValidationResult.Success();
    }

    /// <summary>--token-file, LSM_TOKEN, LSM_TOKEN_FILE, then the local cluster's token file (none: no token is sent).</summary>
    private string? TokenText()
    {
        if (TokenFile is { Length: > 0 } option) return ReadTokenFile(option);
        if (Environment.GetEnvironmentVariable("LSM_TOKEN") is { Length: > 0 } token) return token;
        if (Environment.GetEnvironmentVariable("LSM_TOKEN_FILE") is { Length: > 0 } file) return ReadTokenFile(file);
        return LocalApiToken.Find(ApiUri);
    }

    private static string ReadTokenFile(string path)
    {
        try
        {
            return ApiTokenFile.Read(Path.GetFullPath(path));
        }
        catch (Exception e) when (e is ArgumentException or IOException or UnauthorizedAccessException)
        {
            throw CliFailure.BadUsage(e.Message);
        }
    }

    public LsmApiClient Client()
    {
        var token = TokenText();
        // The token is a password: lsm sends it over the network only encrypted (the Coordinator serves plain HTTP on loopback only).
        if (token is not null && ApiUri.Scheme == "http" && !ApiUri.IsLoopback)
            throw CliFailure.BadUsage($"--api {ApiUri} is plain HTTP beyond loopback: lsm sends its token only over https:// there " +
                                      "(the Coordinator serves HTTPS with --api-certificate)");
        return new LsmApiClient(ApiUri, token, Trust());
    }

    private ApiServerTrust Trust()
    {
        var file = CaFile is { Length: > 0 } option ? option : Environment.GetEnvironmentVariable("LSM_CA_FILE") is { Length: > 0 } env ? env : null;
        if (file is null) return ApiServerTrust.SystemStore;
        try
        {
            return ApiServerTrust.Authorities(Path.GetFullPath(file));
        }
        catch (ArgumentException e)
        {
            throw CliFailure.BadUsage(e.Message);
        }
    }
}
