using LiveMigration.Cli.Commands;
using static LiveMigration.Cli.Commands.VmCreateSettings;

namespace LiveMigration.Cli.Tests;

/// <summary><c>lsm vm create --disk SIZE@DOMAIN[:snapshots=N][:format=raw|qcow2][:preallocated]</c>: what parses, and what each mistake says.</summary>
public sealed class DiskSpecTests
{
    private const long MiB = 1 << 20;

    public static TheoryData<string, DiskSpec> Valid() => new()
    {
        { "64MiB@sdA", new DiskSpec(64 * MiB, "sdA", 0, "raw", false) },
        { "1GiB@fast-ssd:snapshots=2", new DiskSpec(1L << 30, "fast-ssd", 2, "raw", false) },
        { "64MiB@sdA:preallocated", new DiskSpec(64 * MiB, "sdA", 0, "raw", true) },
        { "64MiB@sdA:format=qcow2", new DiskSpec(64 * MiB, "sdA", 0, "qcow2", false) },
        { "64MiB@sdA:format=raw", new DiskSpec(64 * MiB, "sdA", 0, "raw", false) },
        // options in any order
        { "64MiB@sdA:format=qcow2:snapshots=2", new DiskSpec(64 * MiB, "sdA", 2, "qcow2", false) },
        { "64MiB@sdA:preallocated:snapshots=1:format=qcow2", new DiskSpec(64 * MiB, "sdA", 1, "qcow2", true) },
        { " 32MiB@0b6f0c3e-8a51-4bd4-a6e3-2f8a1c9d7e10:snapshots=0 ", new DiskSpec(32 * MiB, "0b6f0c3e-8a51-4bd4-a6e3-2f8a1c9d7e10", 0, "raw", false) },
    };

    [Theory]
    [MemberData(nameof(Valid))]
    public void A_valid_disk_parses_with_its_options(string text, DiskSpec expected)
    {
        Assert.Equal(expected, ParseDisk(text, out var error));
        Assert.Null(error);
    }

    [Theory]
    [InlineData("64MiB", "--disk '64MiB' is not SIZE@DOMAIN[:snapshots=N][:format=raw|qcow2][:preallocated], e.g. 1GiB@fast-ssd:snapshots=2")]
    [InlineData("@sdA", "--disk '@sdA' is not SIZE@DOMAIN[:snapshots=N][:format=raw|qcow2][:preallocated], e.g. 1GiB@fast-ssd:snapshots=2")]
    [InlineData("64MiB@:format=raw", "--disk '64MiB@:format=raw' is not SIZE@DOMAIN[:snapshots=N][:format=raw|qcow2][:preallocated], e.g. 1GiB@fast-ssd:snapshots=2")]
    [InlineData("lots@sdA", "--disk 'lots@sdA': size 'lots' is not a size like 1GiB or 512MiB (a multiple of 512 bytes)")]
    [InlineData("1000@sdA", "--disk '1000@sdA': size '1000' is not a size like 1GiB or 512MiB (a multiple of 512 bytes)")]
    [InlineData("64MiB@sdA:sparse", "--disk '64MiB@sdA:sparse': unknown option 'sparse' (the options are snapshots=N, format=raw|qcow2 and preallocated)")]
    [InlineData("64MiB@sdA:", "--disk '64MiB@sdA:': unknown option '' (the options are snapshots=N, format=raw|qcow2 and preallocated)")]
    [InlineData("64MiB@sdA:Format=qcow2", "--disk '64MiB@sdA:Format=qcow2': unknown option 'Format=qcow2' (the options are snapshots=N, format=raw|qcow2 and preallocated)")]
    [InlineData("64MiB@sdA:snapshots=1:snapshots=2", "--disk '64MiB@sdA:snapshots=1:snapshots=2': option 'snapshots' is given twice")]
    [InlineData("64MiB@sdA:format=raw:format=qcow2", "--disk '64MiB@sdA:format=raw:format=qcow2': option 'format' is given twice")]
    [InlineData("64MiB@sdA:preallocated:preallocated", "--disk '64MiB@sdA:preallocated:preallocated': option 'preallocated' is given twice")]
    [InlineData("64MiB@sdA:snapshots=two", "--disk '64MiB@sdA:snapshots=two': 'snapshots=two' is not snapshots=N with N a number of snapshots, e.g. snapshots=2")]
    [InlineData("64MiB@sdA:snapshots", "--disk '64MiB@sdA:snapshots': 'snapshots' is not snapshots=N with N a number of snapshots, e.g. snapshots=2")]
    [InlineData("64MiB@sdA:snapshots=1000", "--disk '64MiB@sdA:snapshots=1000': 'snapshots=1000' is not snapshots=N with N a number of snapshots, e.g. snapshots=2")]
    [InlineData("64MiB@sdA:format=vmdk", "--disk '64MiB@sdA:format=vmdk': 'format=vmdk' is not format=raw or format=qcow2")]
    [InlineData("64MiB@sdA:format", "--disk '64MiB@sdA:format': 'format' is not format=raw or format=qcow2")]
    [InlineData("64MiB@sdA:preallocated=yes", "--disk '64MiB@sdA:preallocated=yes': 'preallocated=yes': preallocated takes no value (leave it out for a sparse base)")]
    public void A_malformed_disk_is_refused_saying_what_is_wrong(string text, string message)
    {
        Assert.Null(ParseDisk(text, out var error));
        Assert.Equal(message, error);
    }

    [Fact]
    public async Task Vm_create_help_shows_the_disk_spec_with_its_options()
    {
        // the spec's brackets are literal text, not Spectre markup (which refused them: "Could not find color or style")
        var help = await CliProcess.RunAsync(null, "vm", "create", "--help");
        Assert.True(help.ExitCode == 0 && help.Stderr.Length == 0, help.ToString());
        Assert.Contains("SIZE@DOMAIN[:snapshots=N][:format=raw|qcow2][:preallocated]", help.Stdout.Replace("\n", "").Replace(" ", ""));
        Assert.Contains("EXAMPLES", help.Stdout);
    }

    [Fact]
    public async Task Vm_create_refuses_a_malformed_disk_as_bad_usage_before_calling_the_api()
    {
        // nothing listens there: a refusal that reached the API would exit 3 (unreachable), not 2
        var result = await CliProcess.RunAsync("http://127.0.0.1:9", "vm", "create", "vm1", "--host", "host-1",
            "--disk", "64MiB@sdA:format=qcow2", "--disk", "64MiB@sdA:format=qcow2:format=raw");
        Assert.True(result.ExitCode == 2, result.ToString());
        Assert.Contains("option 'format' is given twice", result.Stderr);
    }
}
