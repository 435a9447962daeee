using System.ComponentModel;
using LiveMigration.Cli.Api;
using LiveMigration.Cli.Tls;
using Spectre.Console;
using Spectre.Console.Cli;

namespace LiveMigration.Cli.Commands;

/// <summary>What both <c>lsm tls</c> commands take: the folder of the CA and the node certificates.</summary>
public class TlsSettings : CommandSettings
{
    [CommandOption("--dir <DIR>")]
    [Description("The folder holding ca.crt and ca.key, where node certificates are written as NODE.crt and NODE.key (made 0700, files 0600). Example: --dir /root/lsm-ca")]
    public string Dir { get; set; } = "";

    public override ValidationResult Validate() =>
        Dir.Length > 0 ? ValidationResult.Success() : ValidationResult.Error("--dir DIR is required");
}

public sealed class TlsCaSettings : TlsSettings
{
    [CommandOption("--name <NAME>")]
    [Description("The CA's name (its certificate's CN). Default: lsm cluster CA and today's date")]
    public string? Name { get; set; }
}

public sealed class TlsIssueSettings : TlsSettings
{
    [CommandArgument(0, "<NODE>")]
    [Description("The node's name (its certificate's CN and file names), e.g. coordinator or host-1")]
    public string Node { get; set; } = "";

    [CommandOption("--address <ADDRESS>")]
    [Description("An IP address or DNS name the node is reached at (a subject alternative name; repeatable). Example: --address 10.0.0.5")]
    public string[] Addresses { get; set; } = [];

    [CommandOption("--days <N>")]
    [Description("How long the certificate is valid (never beyond the CA). Default 825")]
    [DefaultValue(825)]
    public int Days { get; set; } = 825;
}

/// <summary><c>lsm tls ca</c>: a new private CA for a cluster; never over an existing one.</summary>
public sealed class TlsCaCommand : Command<TlsCaSettings>
{
    public override int Execute(CommandContext context, TlsCaSettings settings, CancellationToken ct)
    {
        var name = settings.Name is { Length: > 0 } n ? n : $"lsm cluster CA {DateTime.UtcNow:yyyy-MM-dd}";
        try
        {
            var folder = CertificateFolder.Create(settings.Dir, name);
            Output.Console.WriteLine($"CA \"{name}\" in {folder.CaFile} (its key in ca.key, 0600: keep it off the nodes), valid until {folder.CaExpires:u}");
            return ExitCodes.Ok;
        }
        catch (ArgumentException e)
        {
            throw CliFailure.BadUsage(e.Message);
        }
    }
}

/// <summary><c>lsm tls issue NODE</c>: a node certificate signed by the folder's CA (a new one replaces the old: renewal).</summary>
public sealed class TlsIssueCommand : Command<TlsIssueSettings>
{
    public override int Execute(CommandContext context, TlsIssueSettings settings, CancellationToken ct)
    {
        if (settings.Days is < 1 or > 3650) throw CliFailure.BadUsage($"--days {settings.Days}: between 1 and 3650");
        try
        {
            var folder = CertificateFolder.Open(settings.Dir);
            folder.Issue(settings.Node, settings.Addresses, TimeSpan.FromDays(settings.Days));
            Output.Console.WriteLine($"{settings.Node}: {folder.CertificateFile(settings.Node)} and {folder.KeyFile(settings.Node)} (0600); " +
                                     $"start it with --tls-certificate {folder.CertificateFile(settings.Node)} --tls-key {folder.KeyFile(settings.Node)} --tls-ca ca.crt");
            return ExitCodes.Ok;
        }
        catch (ArgumentException e)
        {
            throw CliFailure.BadUsage(e.Message);
        }
    }
}
