using LiveMigration.HostNode.Management;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Tests.Storage.File;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Tests.Storage;

/// <summary>
/// Where a host lets storage domains be made and attached: only under its allowed roots, judged by the real path
/// (.. followed, symlinks resolved), and a refusal makes nothing anywhere.
/// </summary>
public sealed class StorageRootPolicyTests : IDisposable
{
    private const long MiB = 1L << 20;
    private readonly TempDomainRoot _temp = new();
    private readonly List<AttachDomain> _announced = [];

    private string Allowed => Path.Combine(_temp.Root, "allowed");
    private string Outside => Path.Combine(_temp.Root, "outside");

    public StorageRootPolicyTests()
    {
        Directory.CreateDirectory(Allowed);
        Directory.CreateDirectory(Outside);
    }

    public void Dispose() => _temp.Dispose();

    private StorageRootPolicy Policy => new([Allowed]);

    private static OperationFailedException Refused(Action check) => Assert.Throws<OperationFailedException>(check);

    [Fact]
    public void A_path_in_or_below_an_allowed_root_is_allowed_as_its_real_path_even_where_it_does_not_exist_yet()
    {
        Assert.Equal(Allowed, Policy.Check(Allowed));
        Assert.Equal(Path.Combine(Allowed, "new", "deeper"), Policy.Check(Path.Combine(Allowed, "new", "deeper")));
        Assert.Equal(Path.Combine(Allowed, "b"), Policy.Check(Allowed + "/./a/../b/"));
        Assert.False(Directory.Exists(Path.Combine(Allowed, "new")));
    }

    [Fact]
    public void Dot_dot_that_climbs_out_of_the_root_and_a_sibling_with_the_root_as_prefix_are_refused()
    {
        var escape = Refused(() => Policy.Check(Path.Combine(Allowed, "..", "outside", "sd")));
        Assert.Equal(ErrorCodes.PathNotAllowed, escape.Code);
        Assert.Contains(Path.Combine(Outside, "sd"), escape.Message);
        Assert.Contains(Allowed, escape.Message);
        Assert.Equal(ErrorCodes.PathNotAllowed, Refused(() => Policy.Check(Allowed + "-evil")).Code);
        Assert.Equal(ErrorCodes.PathNotAllowed, Refused(() => Policy.Check("/etc")).Code);
        Assert.Equal(ErrorCodes.InvalidArgument, Refused(() => Policy.Check("relative/dir")).Code);
        Assert.Equal(ErrorCodes.PathNotAllowed, Refused(() => StorageRootPolicy.None.Check(Allowed)).Code);
    }

    [Theory]
    [InlineData("new\nline")]
    [InlineData("tab\t")]
    [InlineData("nul\0/x")]
    public void A_path_with_a_control_character_is_refused_even_inside_a_root(string name)
    {
        var refused = Refused(() => Policy.Check(Path.Combine(Allowed, name)));
        Assert.Equal(ErrorCodes.InvalidArgument, refused.Code);
        Assert.Contains("control characters", refused.Message);
        Assert.Empty(Directory.EnumerateFileSystemEntries(Allowed));
    }

    [Fact]
    public void A_symlink_inside_a_root_is_judged_by_its_target()
    {
        var outward = Path.Combine(Allowed, "to-outside");
        Directory.CreateSymbolicLink(outward, Outside);
        Assert.Equal(ErrorCodes.PathNotAllowed, Refused(() => Policy.Check(outward)).Code);
        Assert.Equal(ErrorCodes.PathNotAllowed, Refused(() => Policy.Check(Path.Combine(outward, "sd"))).Code);
        // relative targets too, and .. after a link is the parent of its target, as the kernel walks it
        var relative = Path.Combine(Allowed, "up");
        Directory.CreateSymbolicLink(relative, "../outside");
        Assert.Equal(ErrorCodes.PathNotAllowed, Refused(() => Policy.Check(Path.Combine(relative, "x"))).Code);
        var inner = Path.Combine(Allowed, "inner");
        Directory.CreateDirectory(Path.Combine(Allowed, "real", "deep"));
        Directory.CreateSymbolicLink(inner, Path.Combine(Allowed, "real", "deep"));
        Assert.Equal(Path.Combine(Allowed, "real"), Policy.Check(Path.Combine(inner, "..")));
        Assert.Equal(Path.Combine(Allowed, "real", "deep", "sd"), Policy.Check(Path.Combine(inner, "sd")));
    }

    [Fact]
    public void An_allowed_root_reached_through_a_symlink_allows_its_real_folder()
    {
        var link = Path.Combine(_temp.Root, "srv-link");
        Directory.CreateSymbolicLink(link, Allowed);
        var policy = new StorageRootPolicy([link]);
        Assert.Equal(Path.Combine(Allowed, "sd"), policy.Check(Path.Combine(Allowed, "sd")));
        Assert.Equal(Path.Combine(Allowed, "sd"), policy.Check(Path.Combine(link, "sd")));
        Assert.Equal(ErrorCodes.PathNotAllowed, Refused(() => policy.Check(Outside)).Code);
    }

    [Fact]
    public async Task The_spm_refuses_a_domain_outside_its_roots_and_makes_nothing_anywhere()
    {
        var pool = new StoragePool { AllowedRoots = Policy };
        var spm = new SpmStorage(pool, _announced.Add);
        var link = Path.Combine(Allowed, "escape");
        Directory.CreateSymbolicLink(link, Outside);
        foreach (var path in new[] { Path.Combine(Allowed, "..", "outside", "dotdot"), Path.Combine(link, "through-link"), Outside })
        {
            var refused = Assert.IsType<ManagementRefused>(await spm.HandleAsync(new CreateDomain("sd", path, 64 * MiB)));
            Assert.Equal(ErrorCodes.PathNotAllowed, refused.Code);
        }
        Assert.Empty(Directory.EnumerateFileSystemEntries(Outside));
        Assert.Equal(["escape"], Directory.EnumerateFileSystemEntries(Allowed).Select(Path.GetFileName));
        Assert.Empty(pool.Domains);
        Assert.Empty(_announced);

        // inside: made, and announced under its real path
        var created = Assert.IsType<DomainCreated>(await spm.HandleAsync(new CreateDomain("sd", Path.Combine(Allowed, "x", "..", "sds"), 64 * MiB)));
        Assert.Equal(Path.Combine(Allowed, "sds"), Assert.Single(_announced).Root);
        Assert.Equal(created.Domain.Id, Assert.Single(pool.Domains).Id);
    }

    [Fact]
    public async Task A_host_attaches_no_domain_outside_its_roots_whether_announced_or_remembered()
    {
        // a real domain outside, made by someone else
        var foreign = await FileStorageDomainOutsideAsync();
        var pool = new StoragePool { AllowedRoots = Policy };
        var refused = await Assert.ThrowsAsync<OperationFailedException>(() => DomainRoots.AttachAllUnderAsync(Outside, pool));
        Assert.Equal(ErrorCodes.PathNotAllowed, refused.Code);

        var hostData = Path.Combine(_temp.Root, "host-data");
        var remembered = new DomainRoots(hostData);
        await remembered.RememberAsync(Outside);
        var skipped = new List<string>();
        Assert.Equal(0, await remembered.AttachRememberedAsync(pool, skipped.Add));
        Assert.Equal([Outside], skipped);
        Assert.Empty(pool.Domains);

        // the same root allowed: attached
        var allowing = new StoragePool { AllowedRoots = new StorageRootPolicy([Allowed, Outside]) };
        Assert.Equal(1, await remembered.AttachRememberedAsync(allowing));
        Assert.Equal(foreign, Assert.Single(allowing.Domains).Id);
    }

    private async Task<DomainId> FileStorageDomainOutsideAsync() =>
        (await HostNode.Storage.File.FileStorageDomain.CreateAsync(Outside, DomainId.New(), "foreign", 64 * MiB)).Id;
}
