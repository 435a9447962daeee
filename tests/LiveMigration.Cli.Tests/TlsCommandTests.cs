using LiveMigration.Shared.Hosting;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// <c>lsm tls ca</c> and <c>lsm tls issue</c>: the files a multi-machine cluster's nodes start with (deploy/README.md),
/// read back the way a node reads them; a CA is never made over another one, and a name that would leave the folder is
/// refused. No cluster: only lsm and the files.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class TlsCommandTests : IDisposable
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), $"lsm-tls-{Guid.NewGuid():N}", "ca");

    public void Dispose() => Directory.Delete(Path.GetDirectoryName(_folder)!, recursive: true);

    [Fact]
    public async Task A_CA_and_node_certificates_made_by_lsm_are_what_a_node_accepts_and_a_second_CA_in_the_folder_is_refused()
    {
        var ca = await CliProcess.RunAsync(null, "tls", "ca", "--dir", _folder);
        Assert.True(ca.ExitCode == 0, ca.ToString());
        foreach (var node in new[] { "coordinator", "host-1" })
        {
            var issued = await CliProcess.RunAsync(null, "tls", "issue", node, "--dir", _folder, "--address", "10.0.0.5");
            Assert.True(issued.ExitCode == 0, issued.ToString());
        }

        Assert.Equal(ClusterCertificates.FolderMode, File.GetUnixFileMode(_folder));
        Assert.All(Directory.EnumerateFiles(_folder), f => Assert.Equal(ClusterCertificates.FileMode, File.GetUnixFileMode(f)));
        var coordinator = ClusterTls.Load(Path.Combine(_folder, "coordinator.crt"), Path.Combine(_folder, "coordinator.key"), Path.Combine(_folder, "ca.crt"));
        var host = ClusterTls.Load(Path.Combine(_folder, "host-1.crt"), Path.Combine(_folder, "host-1.key"), Path.Combine(_folder, "ca.crt"));
        Assert.Null(coordinator.RefusalReason(host.Certificate));
        Assert.Null(host.RefusalReason(coordinator.Certificate));

        var caKey = File.ReadAllText(Path.Combine(_folder, "ca.key"));
        var again = await CliProcess.RunAsync(null, "tls", "ca", "--dir", _folder);
        Assert.True(again.ExitCode == 2, again.ToString());
        Assert.Contains("holds a CA already", again.Stderr);
        Assert.Equal(caKey, File.ReadAllText(Path.Combine(_folder, "ca.key")));

        var escape = await CliProcess.RunAsync(null, "tls", "issue", "../host-9", "--dir", _folder);
        Assert.True(escape.ExitCode == 2, escape.ToString());
        Assert.False(File.Exists(Path.Combine(Path.GetDirectoryName(_folder)!, "host-9.key")));
    }
}
