using System.ComponentModel;
using System.Diagnostics;
using System.Xml.Linq;
using LiveMigration.Cli.Api;

namespace LiveMigration.Cli.Local;

/// <summary>
/// What a local cluster of libvirt hosts needs from libvirtd, through <c>virsh</c> (the CLI does not load
/// libvirt.so itself): that it answers before any host starts, and at <c>lsm local down</c> the domains its
/// hosts started (they outlive their host by design, as QEMU processes do under qmp).
/// </summary>
public static class LibvirtCheck
{
    public const string DefaultUri = "qemu:///system";

    /// <summary>Where the operator learns how to make this machine a libvirt host.</summary>
    public const string SetupHint = "deploy/libvirt/setup.sh (as root) installs and starts libvirtd; deploy/libvirt/README.md explains it";

    /// <summary>The prefix and metadata namespace the HostNode's libvirt adapter gives its domains (LibvirtDomainXml).</summary>
    private const string DomainPrefix = "lsm-";
    private static readonly XNamespace Lsm = "urn:x-livemigration-akka:libvirt:1";

    private static readonly TimeSpan VirshTimeout = TimeSpan.FromSeconds(15);

    /// <summary><c>virsh -c URI version</c> must answer; else a failure that names the set-up script.</summary>
    public static async Task EnsureAnswersAsync(string uri, CancellationToken ct = default)
    {
        var (exit, _, error) = await VirshAsync(uri, ["version"], ct);
        if (exit != 0)
            throw CliFailure.Failed($"--hypervisor libvirt: libvirtd does not answer at {uri} (virsh -c {uri} version: {error}); " +
                                    $"start it first: {SetupHint}");
    }

    /// <summary>True when <c>virsh -c URI version</c> answers (the demo decides from it whether to run the set-up script).</summary>
    public static async Task<bool> AnswersAsync(string uri, CancellationToken ct = default) =>
        (await VirshAsync(uri, ["version"], ct)).Exit == 0;

    /// <summary>
    /// Running domains the libvirt adapter started for one of <paramref name="ownerRunDirectories"/> (its
    /// <c>&lt;metadata&gt;</c> names the host's run directory as owner): their names.
    /// </summary>
    public static async Task<IReadOnlyList<string>> OwnedDomainsAsync(string uri, IReadOnlyCollection<string> ownerRunDirectories, CancellationToken ct = default)
    {
        var (exit, names, error) = await VirshAsync(uri, ["list", "--name"], ct);
        if (exit != 0) throw CliFailure.Failed($"cannot list libvirt domains at {uri} (virsh list: {error}); {SetupHint}");
        var owned = new List<string>();
        foreach (var name in names.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Where(n => n.StartsWith(DomainPrefix)))
        {
            var (xmlExit, xml, _) = await VirshAsync(uri, ["dumpxml", name], ct);
            if (xmlExit != 0) continue; // stopped meanwhile
            var owner = XDocument.Parse(xml).Root?.Element("metadata")?.Element(Lsm + "vm")?.Attribute("owner")?.Value;
            if (owner is not null && ownerRunDirectories.Contains(Path.GetFullPath(owner))) owned.Add(name);
        }
        return owned;
    }

    /// <summary><c>virsh destroy</c>: the domain's QEMU is killed (the adapter's domains are transient, so it is gone).</summary>
    public static async Task DestroyAsync(string uri, string domain, CancellationToken ct = default)
    {
        var (exit, _, error) = await VirshAsync(uri, ["destroy", domain], ct);
        // A domain that stopped by itself meanwhile is what destroy wanted.
        if (exit != 0 && !error.Contains("not found") && !error.Contains("not running"))
            throw CliFailure.Failed($"cannot stop libvirt domain {domain} at {uri}: {error}");
    }

    private static async Task<(int Exit, string Output, string Error)> VirshAsync(string uri, IReadOnlyList<string> arguments, CancellationToken ct)
    {
        var psi = new ProcessStartInfo("virsh") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(uri);
        foreach (var a in arguments) psi.ArgumentList.Add(a);
        Process process;
        try { process = Process.Start(psi) ?? throw new Win32Exception("no process"); }
        catch (Win32Exception)
        {
            return (127, "", "virsh is not installed (Debian package libvirt-clients)");
        }
        using (process)
        {
            process.StandardInput.Close();
            var output = process.StandardOutput.ReadToEndAsync(ct);
            var error = process.StandardError.ReadToEndAsync(ct);
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(VirshTimeout);
            try { await process.WaitForExitAsync(timeout.Token); }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                process.Kill();
                return (124, "", $"no answer within {VirshTimeout.TotalSeconds:0} s");
            }
            return (process.ExitCode, await output, (await error).Trim().Replace('\n', ' '));
        }
    }
}
